"""The flash-sale reference application (issue 8, in progress): domain, read models and the
reservation process. The HTTP service, workers, dashboard and load test come next."""
