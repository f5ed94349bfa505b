"""nbval runs the notebooks in this folder; a real Redis and clean Jupyter folders are set up
for them by the plugin below (see tests/fixtures/notebooks.py)."""

pytest_plugins = ["tests.fixtures.notebooks"]
