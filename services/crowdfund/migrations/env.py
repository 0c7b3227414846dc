from alembic import context

from services.crowdfund.models import metadata
from shared.migrations import run_env

run_env(context, metadata)
