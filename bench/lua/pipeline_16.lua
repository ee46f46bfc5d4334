-- Send 16 GET requests back to back in a single write; wrk counts each response.
local depth = 16
local pipelined

init = function(args)
  local batch = {}
  for i = 1, depth do
    batch[i] = wrk.format("GET", "/")
  end
  pipelined = table.concat(batch)
end

request = function()
  return pipelined
end
