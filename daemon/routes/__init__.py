"""The HTTP API's routers, one module per concern; ``daemon.app.create_app`` includes each of them."""
