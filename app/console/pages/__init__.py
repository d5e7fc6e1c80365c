"""The console's pages: one module per page (or pair of pages), each a router
of thin routes: read through a service, render a template."""
