from flowsense.cli import entry

entry()
