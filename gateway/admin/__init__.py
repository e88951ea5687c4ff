"""The admin API (starlette): services, routes, config versions, match. See `app.build_admin_app`."""
