-- POST a 1 KiB body on every request (the echo app sends it back).
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
