"""Work behind the request path: the group-commit writer and its SQL."""
