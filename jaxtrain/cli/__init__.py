"""The command line: argument parsing and `jaxtrain launch`."""
