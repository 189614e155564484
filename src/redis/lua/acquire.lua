-- taskgate SharedConcurrency: take up to #holders slots of a counted limit.
--
-- KEYS[1]  a sorted set: member = holder id (one per slot held),
--          score = when that slot expires, milliseconds on this server's TIME.
-- ARGV[1]  limit   slots in all (integer >= 0)
-- ARGV[2]  ttl_ms  how long a granted slot lasts unless renewed (integer >= 1)
-- ARGV[3..] holder ids to grant, in order
-- Returns  {granted, wait_ms}: the first `granted` holder ids now hold a slot
--          (an id that already held one is refreshed and counts as granted);
--          if not all were granted, wait_ms = ms until the earliest slot
--          expires (-1 if none is held, i.e. limit 0); else 0.
-- The key's PEXPIRE follows the latest expiry, so an idle set disappears.
-- Effects replication: see gcra.lua.
if redis.replicate_commands then redis.replicate_commands() end

local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
if not limit or not ttl or limit < 0 or ttl < 1 or #ARGV < 3 then
  return redis.error_reply('ERR taskgate acquire: bad arguments')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]

-- A slot whose expiry is <= now is free (its holder vanished or is late).
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local held = redis.call('ZCARD', key)
local exp = now + ttl

local granted = 0
for i = 3, #ARGV do
  local h = ARGV[i]
  if redis.call('ZSCORE', key, h) then
    redis.call('ZADD', key, exp, h)
  elseif held < limit then
    redis.call('ZADD', key, exp, h)
    held = held + 1
  else
    break
  end
  granted = granted + 1
end

local wait = 0
if granted < #ARGV - 2 then
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then wait = tonumber(first[2]) - now else wait = -1 end
end

local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if last[2] then
  local ttl_key = tonumber(last[2]) - now
  if ttl_key < 1 then ttl_key = 1 end
  redis.call('PEXPIRE', key, ttl_key)
end
return {granted, wait}
