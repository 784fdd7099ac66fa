"""Built-in ``tdfusion`` subcommands, one module each, registered through the ``tdfusion_register_commands`` hook."""
