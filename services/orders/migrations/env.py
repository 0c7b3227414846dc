from alembic import context

from services.orders.models import metadata
from shared.migrations import run_env

run_env(context, metadata)
