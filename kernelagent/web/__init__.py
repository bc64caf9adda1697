"""HTTP: the only package that imports tornado.web."""
