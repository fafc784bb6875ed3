"""From run folders to results: the tables, the report files and the convergence figures. Reads
sweeps; imports nothing that submits or asks a scheduler."""
