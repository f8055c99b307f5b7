"""``python -m wecom_plugin`` is the ``wecom-plugin`` console script."""

from wecom_plugin.cli import main

main()
