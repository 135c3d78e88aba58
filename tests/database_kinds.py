"""The kinds of database a test parametrized over both runs on, in this order: the `db_url` fixture's and the
engine tests' `issuer` fixture's parameters."""

import pytest

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
