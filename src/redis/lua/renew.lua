-- taskgate SharedConcurrency: extend slots that are still held.
--
-- KEYS[1]  the sorted set (see acquire.lua)
-- ARGV[1]  ttl_ms  new lifetime from now (integer >= 1)
-- ARGV[2..] holder ids
-- Returns  one 1/0 per holder id: 1 = still held, now expiring at now + ttl;
--          0 = no longer held (expired or released: its slot may be someone
--          else's now, so the caller must stop as if it had lost it).
-- Effects replication: see gcra.lua.
if redis.replicate_commands then redis.replicate_commands() end

local ttl = tonumber(ARGV[1])
if not ttl or ttl < 1 or #ARGV < 2 then
  return redis.error_reply('ERR taskgate renew: bad arguments')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]

redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local exp = now + ttl
local out = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', key, ARGV[i]) then
    redis.call('ZADD', key, 'XX', exp, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end

local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if last[2] then
  local ttl_key = tonumber(last[2]) - now
  if ttl_key < 1 then ttl_key = 1 end
  redis.call('PEXPIRE', key, ttl_key)
end
return out
