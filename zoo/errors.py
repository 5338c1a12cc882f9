"""The zoo's own exception type: a one-line message naming what was wrong and what was expected."""


class ZooError(Exception):
    pass
