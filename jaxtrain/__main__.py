from jaxtrain.cli import entry

entry()
