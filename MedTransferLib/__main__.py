from MedTransferLib.app.cli import run

run()
