-- wrk script: GET /api/v1/items/{id}/similar?k=10 over random ids in 1..$BENCH_ITEMS.
local n = tonumber(os.getenv("BENCH_ITEMS") or "20000")
math.randomseed(42)
request = function()
  return wrk.format("GET", "/api/v1/items/" .. math.random(1, n) .. "/similar?k=10")
end
