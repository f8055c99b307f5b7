"""``python -m wecom_plugin.emulator``: the ``emulator`` command without the plugin's CLI."""

from .cli import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="python -m wecom_plugin.emulator")
