-- Replays pre-signed Idle reports of many devices (written by `cloudvpp simulate bodies`)
-- round-robin; every request carries its own Mdm-Signature, verified by the server.
local dir = os.getenv("BODIES_DIR")
local n = tonumber(os.getenv("BODIES_N"))
local bodies, sigs = {}, {}
for i = 0, n - 1 do
  local f = assert(io.open(dir .. "/" .. i .. ".plist", "rb")); bodies[i + 1] = f:read("*a"); f:close()
  local g = assert(io.open(dir .. "/" .. i .. ".sig", "rb")); sigs[i + 1] = g:read("*a"); g:close()
end
local counter = math.random(n)
request = function()
  counter = counter + 1
  local k = (counter % n) + 1
  return wrk.format("PUT", "/mdm", {
    ["Content-Type"] = "application/x-apple-aspen-mdm; charset=UTF-8",
    ["Mdm-Signature"] = sigs[k],
  }, bodies[k])
end
