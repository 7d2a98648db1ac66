"""Service functions: the service's behaviour, free of HTTP; they raise `app.errors` and flush."""
