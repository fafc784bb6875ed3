"""Where jobs run: the executor interface, the local executor (background processes) and the Slurm
executor (job arrays through submitit), and the entry points a job process runs."""
