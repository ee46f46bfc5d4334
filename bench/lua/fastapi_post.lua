-- POST a small JSON document to the FastAPI app's /items (validated into a pydantic model).
wrk.method = "POST"
wrk.path = "/items"
wrk.body = '{"name": "kestrel", "price": 12.5, "quantity": 3, "tags": ["bird", "fast"]}'
wrk.headers["Content-Type"] = "application/json"
