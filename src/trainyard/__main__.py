from trainyard.cli import entry

entry()
