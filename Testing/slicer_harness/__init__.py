"""A behavioural harness for the Slicer module, as close to Slicer as this machine allows.

See ``README.md`` in this folder for what it is, what is real and what only a real Slicer can
confirm."""
