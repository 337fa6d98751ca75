from jaxtrain.cli.main import entry

entry()
