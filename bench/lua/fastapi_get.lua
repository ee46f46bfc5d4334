-- GET the FastAPI app's /items/{item_id} with a path and a query parameter.
wrk.path = "/items/42?q=kestrel"
