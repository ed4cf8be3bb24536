"""The analyst workspace (``distillwatch serve``): pages, cases, actions and evidence reports.

Reads go through :class:`Workspace` (named queries, result objects), writes through :class:`Desk`
(validated, audited), and actions reach the gateways through a :class:`Channel`.
"""

from distillwatch.workspace.app import WorkspaceApp, WorkspaceConfig, create_app
from distillwatch.workspace.auth import ROLES, LoginLimiter, Sessions, User, Users
from distillwatch.workspace.cases import ACTIONS, Desk
from distillwatch.workspace.channels import (
    AdminApiChannel,
    Channel,
    RecordOnlyChannel,
    StateChannel,
)
from distillwatch.workspace.queries import Workspace, highlight

__all__ = [
    "ACTIONS",
    "ROLES",
    "AdminApiChannel",
    "Channel",
    "Desk",
    "LoginLimiter",
    "RecordOnlyChannel",
    "Sessions",
    "StateChannel",
    "User",
    "Users",
    "Workspace",
    "WorkspaceApp",
    "WorkspaceConfig",
    "create_app",
    "highlight",
]
