"""The learned dispatchers live with the models they are part of (:mod:`nli_routing.models.dispatcher`):
a model rebuilds its dispatcher on load without this package. Kept as an alias for old imports."""

from ..models.dispatcher import *  # noqa: F401,F403
from ..models.dispatcher import __all__  # noqa: F401
