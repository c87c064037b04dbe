"""Authentication and authorization: API tokens and OIDC JWTs in, a Principal and its roles out,
checked against one role table (roles.py) by the method wrapper on every RPC but health."""

from flywheel.auth.authenticator import Authenticator
from flywheel.auth.guard import Guard
from flywheel.auth.principal import ANONYMOUS, Principal, current

__all__ = ["ANONYMOUS", "Authenticator", "Guard", "Principal", "current"]
