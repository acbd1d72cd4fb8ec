"""Roles are Django groups: viewers look, operators replay, admins manage streams."""

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
