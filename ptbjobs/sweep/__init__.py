"""A sweep as data: the grid file expanded into runs, and the sweep folder on disk (manifest, lock,
run folders). Read by the executors, the launch commands and the analysis alike."""
