from ptbjobs.cli import entry

entry()
