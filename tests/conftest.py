"""Shared test setup. Its presence makes pytest put tests/ on sys.path (rootdir conftest,
prepend import mode), so helpers here such as cli_helpers import from every test folder."""
