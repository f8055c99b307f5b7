"""Flask extensions, created unbound; :func:`wecom_plugin.create_app` binds them.

Importing this module creates no app, opens no connection and configures no logging.
"""

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from wecom_plugin.models.base import Base

db = SQLAlchemy(model_class=Base)
migrate = Migrate()
