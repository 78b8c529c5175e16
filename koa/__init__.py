"""The product's launcher: the `koa` command line and `koa up` (model server + web UI)."""
