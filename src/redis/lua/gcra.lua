-- taskgate SharedRate: a GCRA lease that can grant part of what it is asked.
--
-- KEYS[1]  state key: a string holding the TAT (theoretical arrival time),
--          microseconds on this server's clock (TIME), as a decimal integer.
-- ARGV[1]  T   emission interval, microseconds per token (integer >= 1)
-- ARGV[2]  tau burst tolerance, microseconds, (burst - 1) * T (integer >= 0)
-- ARGV[3]  n   tokens asked for (integer >= 0; 0 only reads)
-- Returns  {granted, wait_us}: granted = min(n, tokens available now);
--          wait_us = microseconds from now until at least one more token is
--          available (0 if one is available now).
--
-- Time comes from the server's TIME only, never from the client. TIME is
-- non-deterministic, so the script must be replicated by its effects (the SET),
-- which is the default since Redis 5 and the only mode since Redis 7; the
-- call below opts in on 3.2 to 4.x and is a no-op after.
if redis.replicate_commands then redis.replicate_commands() end

local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if not T or not tau or not n or T < 1 or tau < 0 or n < 0 then
  return redis.error_reply('ERR taskgate gcra: bad arguments')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A missing key, or a TAT in the past, means "idle": as if TAT = now.
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end

-- k tokens conform iff tat + (k - 1) * T <= now + tau.
local avail = math.floor((now + tau - tat) / T) + 1
if avail < 0 then avail = 0 end
local granted = math.min(n, avail)

if granted > 0 then
  tat = tat + granted * T
  -- Once TIME passes the TAT the key carries no information (a missing key
  -- reads the same), so it may vanish then. tat - now <= tau + granted * T.
  local ttl_ms = math.ceil((tat - now) / 1000)
  if ttl_ms < 1 then ttl_ms = 1 end
  -- %.0f: tostring() would print 1.7e+15 and lose microseconds.
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl_ms)
end

local wait = tat - tau - now
if wait < 0 then wait = 0 end
return {granted, wait}
