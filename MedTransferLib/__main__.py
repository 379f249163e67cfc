import sys

from MedTransferLib.app.cli import main

sys.exit(main())
