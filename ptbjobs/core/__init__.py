"""What every layer stands on: the one error type, crash-safe file writes, and the names of run and
job states. Imports nothing else from ptbjobs."""
