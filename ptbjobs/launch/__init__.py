"""The sweep commands' library: submit, retry, cancel, status and logs, over the executors."""
