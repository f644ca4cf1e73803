-- wrk script: POST the image in $BENCH_IMAGE as the raw request body.
local f = assert(io.open(os.getenv("BENCH_IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
