"""The console: the people's side of the service at /console.

Server-rendered pages over the same services as the API. Like `app.api` it
is an edge: it speaks to `app.services` and `app.domain`, never to the
database adapter, and only `app.console.deps` knows the container.
"""
