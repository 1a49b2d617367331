"""Code shared by the gateway, the controller and the supervisor: settings, keys, messages."""
