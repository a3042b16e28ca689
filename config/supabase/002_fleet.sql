-- prefetchd fleet: many hosts, one wanted-set per group, one origin download per file,
-- through Supabase. Apply after 001_prefetchd.sql; safe to apply twice.
--   psql "$SUPABASE_DB_URL" -v ON_ERROR_STOP=1 -f config/supabase/002_fleet.sql
--
-- Who does what:
--   service_role (the service key): writes the wanted-set (prefetchd fleet want|unwant|
--     forget), reads everything; bypasses row-level security.
--   prefetchd_host (a host key: a JWT with role "prefetchd_host" and the claims "group"
--     and "host"): reads its group's wanted-set, takes and releases download leases,
--     records Storage blobs and reports its own state, only as its own host, only in its
--     own group. Row-level security on every table enforces that.
--
-- The functions are SECURITY INVOKER: the caller's grants and policies decide, so a
-- host key can do through a function exactly what it could do with plain SQL.

-- -- role and claims ------------------------------------------------------------------

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'prefetchd_host') then
        begin
            create role prefetchd_host nologin;
        exception when duplicate_object then
            null;  -- created meanwhile by a concurrent run of this file
        end;
    end if;
    -- PostgREST (authenticator) and Storage (supabase_storage_admin) switch to the role
    -- named in the JWT: they must be members of it.
    if exists (select 1 from pg_roles where rolname = 'authenticator') then
        grant prefetchd_host to authenticator;
    end if;
    if exists (select 1 from pg_roles where rolname = 'supabase_storage_admin') then
        grant prefetchd_host to supabase_storage_admin;
    end if;
end
$$;

grant usage on schema public to prefetchd_host;

-- The group and host claims of the caller's JWT (PostgREST and Storage put the claims in
-- request.jwt.claims); null for keys without them (the service key).
create or replace function public.prefetchd_jwt_group()
returns text
language sql
stable
as $$
    select nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'group', '')
$$;

create or replace function public.prefetchd_jwt_host()
returns text
language sql
stable
as $$
    select nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'host', '')
$$;

-- The group a call acts on: the caller's group claim, else the group_name argument.
-- A host key cannot name another group; a call must name one somehow.
create or replace function public.prefetchd_fleet_group(group_name text)
returns text
language plpgsql
stable
set search_path = public, pg_temp
as $$
declare
    claimed text := public.prefetchd_jwt_group();
begin
    if claimed is not null and group_name is not null and group_name <> claimed then
        raise exception 'prefetchd fleet: this key belongs to group %, not %', claimed, group_name
            using errcode = '42501';
    end if;
    if coalesce(claimed, group_name, '') = '' then
        raise exception 'prefetchd fleet: no group (the key has no group claim and no group_name was given)'
            using errcode = '22023';
    end if;
    return coalesce(claimed, group_name);
end;
$$;

-- -- the wanted-set ---------------------------------------------------------------------

create sequence if not exists public.fleet_wants_revision_seq;

-- Rows of fleet_wants are never DELETEd: a host learns of changes by polling revisions,
-- and a deleted row has no revision, so no host would ever see it go. To drop an entry,
-- write action 'forget' (prefetchd fleet forget), which hosts apply like any change.
-- Provider names must match across the group's hosts ([providers.<name>] in each
-- config): they are part of the lease key and of the fleet_ids key, so a file wanted as
-- provider "kimi" on one host and "moonshot" on another is two files to the fleet.
create table if not exists public.fleet_wants (
    group_name  text not null,
    file_id     text not null,
    provider    text,
    sha256      text check (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint check (size >= 0),
    dest        text,
    pin         boolean not null default false,
    ttl         text,
    action      text not null default 'want' check (action in ('want', 'unwant', 'forget')),
    revision    bigint not null,
    updated_at  timestamptz not null default now(),
    primary key (group_name, file_id)
);
create index if not exists fleet_wants_group_revision_idx
    on public.fleet_wants (group_name, revision);

-- Every write of a row gives it the next revision. A host polls
--     select ... from fleet_wants where group_name = G and revision > R order by revision
-- and remembers the highest revision it saw. A sequence alone does not make that safe:
-- transaction T1 may draw revision 5, T2 draw 6 and commit first; a poll between the two
-- commits sees 6, moves R to 6, and never sees 5. So writers of one group serialize on a
-- transaction-level advisory lock keyed on the group, taken before the revision is drawn:
-- T2 cannot draw a revision until T1 has committed (or rolled back), so revisions of a
-- group become visible in increasing order and a poll never skips one. Groups do not
-- block each other.
create or replace function public.prefetchd_fleet_wants_stamp()
returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
begin
    perform pg_advisory_xact_lock(hashtextextended('prefetchd.fleet_wants:' || new.group_name, 0));
    new.revision := nextval('public.fleet_wants_revision_seq');
    new.updated_at := now();
    return new;
end;
$$;

drop trigger if exists fleet_wants_stamp on public.fleet_wants;
create trigger fleet_wants_stamp
    before insert or update on public.fleet_wants
    for each row execute function public.prefetchd_fleet_wants_stamp();

-- Write entries of a group's wanted-set; `entries` is a JSON array of objects with the
-- keys of a request file (file_id, provider, sha256, size, dest, pin, ttl, action; only
-- file_id is required, action defaults to 'want'). A key given replaces the earlier
-- value (null included); a key left out keeps it, except when the row was forgotten (or
-- is being forgotten): then the row starts afresh from the keys given. Returns the
-- highest revision written (0 for an empty array). For the service key; host keys are
-- refused.
create or replace function public.prefetchd_fleet_want(group_name text, entries jsonb)
returns bigint
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := prefetchd_fleet_want.group_name;
    e jsonb;
    i integer := 0;
    k text;
    act text;
    rev bigint;
    top bigint := 0;
begin
    if public.prefetchd_jwt_host() is not null then
        raise exception 'prefetchd_fleet_want: a host key cannot write the wanted-set'
            using errcode = '42501';
    end if;
    if coalesce(g, '') = '' then
        raise exception 'prefetchd_fleet_want: group_name is required' using errcode = '22023';
    end if;
    if entries is null or jsonb_typeof(entries) <> 'array' then
        raise exception 'prefetchd_fleet_want: entries must be a JSON array' using errcode = '22023';
    end if;
    for e in select value from jsonb_array_elements(entries) loop
        i := i + 1;
        if jsonb_typeof(e) <> 'object' then
            raise exception 'prefetchd_fleet_want: entry %: not a JSON object', i
                using errcode = '22023';
        end if;
        for k in select jsonb_object_keys(e) loop
            if k not in ('file_id', 'provider', 'sha256', 'size', 'dest', 'pin', 'ttl', 'action') then
                raise exception 'prefetchd_fleet_want: entry %: unknown key %', i, k
                    using errcode = '22023';
            end if;
        end loop;
        if jsonb_typeof(e -> 'file_id') is distinct from 'string' or e ->> 'file_id' = '' then
            raise exception 'prefetchd_fleet_want: entry %: file_id must be a non-empty string', i
                using errcode = '22023';
        end if;
        for k in select unnest(array['provider', 'sha256', 'dest', 'ttl', 'action']) loop
            if e ? k and jsonb_typeof(e -> k) not in ('string', 'null') then
                raise exception 'prefetchd_fleet_want: entry %: % must be a string', i, k
                    using errcode = '22023';
            end if;
        end loop;
        if e ->> 'sha256' !~ '^[0-9a-f]{64}$' then
            raise exception 'prefetchd_fleet_want: entry %: sha256 must be 64 lowercase hex digits', i
                using errcode = '22023';
        end if;
        if e ? 'size' and jsonb_typeof(e -> 'size') <> 'null' and (jsonb_typeof(e -> 'size') <> 'number'
                or (e ->> 'size') !~ '^[0-9]{1,18}$') then
            raise exception 'prefetchd_fleet_want: entry %: size must be a non-negative integer', i
                using errcode = '22023';
        end if;
        if e ? 'pin' and jsonb_typeof(e -> 'pin') not in ('boolean', 'null') then
            raise exception 'prefetchd_fleet_want: entry %: pin must be true or false', i
                using errcode = '22023';
        end if;
        act := coalesce(e ->> 'action', 'want');
        if act not in ('want', 'unwant', 'forget') then
            raise exception 'prefetchd_fleet_want: entry %: action must be want, unwant or forget, not %', i, act
                using errcode = '22023';
        end if;

        insert into public.fleet_wants as w
            (group_name, file_id, provider, sha256, size, dest, pin, ttl, action)
        values (g, e ->> 'file_id', e ->> 'provider', e ->> 'sha256', (e ->> 'size')::bigint,
                e ->> 'dest', coalesce((e ->> 'pin')::boolean, false), e ->> 'ttl', act)
        on conflict on constraint fleet_wants_pkey do update set
            provider = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'provider'
                            then excluded.provider else w.provider end,
            sha256   = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'sha256'
                            then excluded.sha256 else w.sha256 end,
            size     = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'size'
                            then excluded.size else w.size end,
            dest     = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'dest'
                            then excluded.dest else w.dest end,
            pin      = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'pin'
                            then excluded.pin else w.pin end,
            ttl      = case when w.action = 'forget' or excluded.action = 'forget' or e ? 'ttl'
                            then excluded.ttl else w.ttl end,
            action   = excluded.action
        returning w.revision into rev;
        top := greatest(top, rev);
    end loop;
    return top;
end;
$$;

-- -- download leases --------------------------------------------------------------------

create table if not exists public.fleet_claims (
    group_name  text not null,
    key         text not null,
    host        text not null,
    expires_at  timestamptz not null,
    taken_at    timestamptz not null default now(),
    primary key (group_name, key)
);

-- Take or renew the lease on `key` for `lease_seconds`. True when `host` holds it now:
-- it was free, it had expired (its holder died), or `host` already held it (a renewal,
-- which keeps taken_at). False when another host holds a live lease.
-- Not one INSERT ... ON CONFLICT DO UPDATE: under row-level security its UPDATE path
-- checks the existing row against the UPDATE policy before its WHERE, and that policy
-- (rightly) does not let a host touch another host's live lease, so a lost race would be
-- an error instead of false. Instead: insert if free; else update the row only if it
-- expired or is ours (a plain UPDATE skips a row the policy hides, and re-checks a row
-- that a racing host changed first, so two hosts cannot both win); else, if the row
-- still exists, another host holds it. A row released between the two steps: try again.
create or replace function public.prefetchd_fleet_claim(
    key text, host text, lease_seconds integer, group_name text default null)
returns boolean
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_claim.group_name);
    k text := prefetchd_fleet_claim.key;
    h text := prefetchd_fleet_claim.host;
    won boolean;
begin
    if coalesce(k, '') = '' or coalesce(h, '') = '' then
        raise exception 'prefetchd_fleet_claim: key and host are required' using errcode = '22023';
    end if;
    -- At most an hour: the policies refuse a lease that outlives now() + 1 hour, so a
    -- host key cannot hold a key forever; a long download renews its lease instead.
    if lease_seconds is null or lease_seconds < 1 or lease_seconds > 3600 then
        raise exception 'prefetchd_fleet_claim: lease_seconds must be between 1 and 3600, not %', lease_seconds
            using errcode = '22023';
    end if;
    for attempt in 1..3 loop
        insert into public.fleet_claims as c (group_name, key, host, expires_at, taken_at)
        values (g, k, h, now() + make_interval(secs => lease_seconds), now())
        on conflict on constraint fleet_claims_pkey do nothing
        returning true into won;
        if won then
            return true;
        end if;
        update public.fleet_claims c set
            host = h,
            expires_at = now() + make_interval(secs => lease_seconds),
            taken_at = case when c.host = h then c.taken_at else now() end
        where c.group_name = g and c.key = k and (c.expires_at <= now() or c.host = h)
        returning true into won;
        if won then
            return true;
        end if;
        if exists (select 1 from public.fleet_claims c where c.group_name = g and c.key = k) then
            return false;
        end if;
    end loop;
    return false;
end;
$$;

-- Give up a lease; only its holder can. True when a lease was released.
create or replace function public.prefetchd_fleet_release(
    key text, host text, group_name text default null)
returns boolean
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_release.group_name);
begin
    delete from public.fleet_claims c
    where c.group_name = g and c.key = prefetchd_fleet_release.key
      and c.host = prefetchd_fleet_release.host;
    return found;
end;
$$;

-- -- the Storage cache index ------------------------------------------------------------

-- A blob: the bytes of sha256, uploaded to the group's cache bucket at object_path
-- (<group>/sha256/<hex>).
create table if not exists public.fleet_blobs (
    group_name   text not null,
    sha256       text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint not null check (size >= 0),
    object_path  text not null,
    uploaded_by  text not null,
    created_at   timestamptz not null default now(),
    primary key (group_name, sha256)
);
-- The file's name as the origin gave it, so a host served from the cache (a file wanted
-- with its sha256, which fleet_ids does not map) publishes it under that name, not its hash.
alter table public.fleet_blobs add column if not exists name text;

-- (provider, file) -> sha256, for files whose hash nobody knows before downloading them.
-- id_key is a hash of the real file_id made by the daemon (a file_id may carry secrets);
-- file_id is its display form, for people.
create table if not exists public.fleet_ids (
    group_name   text not null,
    provider     text not null,
    id_key       text not null,
    file_id      text,
    sha256       text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint check (size >= 0),
    name         text,
    recorded_by  text not null,
    recorded_at  timestamptz not null default now(),
    primary key (group_name, provider, id_key)
);
-- name: what the origin called the file, so every host publishes it under that name.
alter table public.fleet_ids add column if not exists name text;

-- Record an uploaded blob (a second upload of the same bytes changes nothing) and, when
-- provider and id_key are given, which file those bytes are. The first host to record a
-- (provider, id_key) owns that mapping: a later record by another host changes nothing;
-- the same host's record replaces its own.
create or replace function public.prefetchd_fleet_record_blob(
    sha256 text, size bigint, object_path text, host text,
    provider text default null, id_key text default null, file_id text default null,
    group_name text default null, name text default null)
returns void
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_record_blob.group_name);
    hex text := prefetchd_fleet_record_blob.sha256;
begin
    if hex is null or hex !~ '^[0-9a-f]{64}$' then
        raise exception 'prefetchd_fleet_record_blob: sha256 must be 64 lowercase hex digits'
            using errcode = '22023';
    end if;
    if size is null or size < 0 or coalesce(object_path, '') = ''
            or coalesce(prefetchd_fleet_record_blob.host, '') = '' then
        raise exception 'prefetchd_fleet_record_blob: size (>= 0), object_path and host are required'
            using errcode = '22023';
    end if;
    if (provider is null) <> (id_key is null) then
        raise exception 'prefetchd_fleet_record_blob: provider and id_key go together'
            using errcode = '22023';
    end if;
    insert into public.fleet_blobs (group_name, sha256, size, object_path, uploaded_by, name)
    values (g, hex, size, object_path, prefetchd_fleet_record_blob.host,
            prefetchd_fleet_record_blob.name)
    on conflict on constraint fleet_blobs_pkey do nothing;
    if provider is not null then
        -- First writer wins: a host may correct its own mapping, never another host's (a
        -- stolen key must not remap a file to bytes of its choosing). Insert-or-nothing,
        -- then an UPDATE of our own row only (not ON CONFLICT DO UPDATE ... WHERE: under
        -- row-level security that is an error, not a no-op, on another host's row).
        insert into public.fleet_ids as f
            (group_name, provider, id_key, file_id, sha256, size, name, recorded_by)
        values (g, provider, id_key, prefetchd_fleet_record_blob.file_id, hex, size,
                prefetchd_fleet_record_blob.name, prefetchd_fleet_record_blob.host)
        on conflict on constraint fleet_ids_pkey do nothing;
        if not found then
            update public.fleet_ids f set
                file_id = prefetchd_fleet_record_blob.file_id, sha256 = hex,
                size = prefetchd_fleet_record_blob.size,
                name = prefetchd_fleet_record_blob.name, recorded_at = now()
            where f.group_name = g and f.provider = prefetchd_fleet_record_blob.provider
              and f.id_key = prefetchd_fleet_record_blob.id_key
              and f.recorded_by = prefetchd_fleet_record_blob.host;
        end if;
    end if;
end;
$$;

-- -- files the cache cannot take -------------------------------------------------------

-- Files Storage refused for their size (413 `Maximum size exceeded`: over the cache
-- bucket's file_size_limit or the project's upload limit, 50 MB on the free plan). Such a
-- file is never cached: every host fetches it from the origin, without a lease. The first
-- host refused records it here (and logs it, once for the group); the others read this
-- table before they claim or upload, so nobody tries again. After raising the limit,
-- delete the rows (as the project's owner) to let the cache take those files:
--     delete from public.fleet_uncacheable where group_name = 'my-group';
create table if not exists public.fleet_uncacheable (
    group_name   text not null,
    provider     text not null,
    id_key       text not null,
    file_id      text,
    sha256       text check (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint check (size >= 0),
    reason       text not null,
    recorded_by  text not null,
    recorded_at  timestamptz not null default now(),
    primary key (group_name, provider, id_key)
);
create index if not exists fleet_uncacheable_sha256_idx
    on public.fleet_uncacheable (group_name, sha256);

-- Record that (provider, id_key) is too big for the cache; true when this call recorded
-- it (the first host to learn it), false when it was known already.
create or replace function public.prefetchd_fleet_record_uncacheable(
    provider text, id_key text, host text, reason text, file_id text default null,
    sha256 text default null, size bigint default null, group_name text default null)
returns boolean
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_record_uncacheable.group_name);
    won boolean;
begin
    if coalesce(provider, '') = '' or coalesce(id_key, '') = ''
            or coalesce(host, '') = '' or coalesce(reason, '') = '' then
        raise exception 'prefetchd_fleet_record_uncacheable: provider, id_key, host and reason are required'
            using errcode = '22023';
    end if;
    insert into public.fleet_uncacheable as u
        (group_name, provider, id_key, file_id, sha256, size, reason, recorded_by)
    values (g, provider, id_key, prefetchd_fleet_record_uncacheable.file_id,
            prefetchd_fleet_record_uncacheable.sha256, prefetchd_fleet_record_uncacheable.size,
            reason, host)
    on conflict on constraint fleet_uncacheable_pkey do nothing
    returning true into won;
    return coalesce(won, false);
end;
$$;

-- -- hosts and their files --------------------------------------------------------------

create table if not exists public.fleet_hosts (
    group_name  text not null,
    host        text not null,
    last_seen   timestamptz not null default now(),
    version     text,
    ready       bigint,
    queued      bigint,
    failed      bigint,
    bytes       bigint,
    primary key (group_name, host)
);

create table if not exists public.fleet_states (
    group_name  text not null,
    host        text not null,
    id_key      text not null,
    file_id     text,
    state       text not null,
    sha256      text check (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint,
    updated_at  timestamptz not null default now(),
    primary key (group_name, host, id_key)
);
-- Which hosts have a file: the daemon looks states up by (group_name, id_key).
create index if not exists fleet_states_id_key_idx on public.fleet_states (group_name, id_key);

-- A host's report, from its outbox: per-file states (an array of {id_key, file_id, state,
-- sha256, size}; state 'forgotten' deletes the row) and a heartbeat {ready, queued,
-- failed, bytes, version} (null: only last_seen moves). Upserts, so a report sent twice
-- changes nothing more. Returns how many state objects were applied.
create or replace function public.prefetchd_fleet_report(
    host text, states jsonb, heartbeat jsonb, group_name text default null)
returns integer
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_report.group_name);
    h text := prefetchd_fleet_report.host;
    s jsonb;
    n integer := 0;
begin
    if coalesce(h, '') = '' then
        raise exception 'prefetchd_fleet_report: host is required' using errcode = '22023';
    end if;
    if states is not null and jsonb_typeof(states) <> 'array' then
        raise exception 'prefetchd_fleet_report: states must be a JSON array' using errcode = '22023';
    end if;
    if heartbeat is not null and jsonb_typeof(heartbeat) not in ('object', 'null') then
        raise exception 'prefetchd_fleet_report: heartbeat must be a JSON object' using errcode = '22023';
    end if;
    for s in select value from jsonb_array_elements(coalesce(states, '[]'::jsonb)) loop
        if jsonb_typeof(s) <> 'object' or coalesce(s ->> 'id_key', '') = ''
                or coalesce(s ->> 'state', '') = '' then
            raise exception 'prefetchd_fleet_report: state %: id_key and state are required', n + 1
                using errcode = '22023';
        end if;
        if s ->> 'state' = 'forgotten' then
            delete from public.fleet_states t
            where t.group_name = g and t.host = h and t.id_key = s ->> 'id_key';
        else
            insert into public.fleet_states as t
                (group_name, host, id_key, file_id, state, sha256, size, updated_at)
            values (g, h, s ->> 'id_key', s ->> 'file_id', s ->> 'state', s ->> 'sha256',
                    (s ->> 'size')::bigint, now())
            on conflict on constraint fleet_states_pkey do update set
                file_id = excluded.file_id, state = excluded.state, sha256 = excluded.sha256,
                size = excluded.size, updated_at = now();
        end if;
        n := n + 1;
    end loop;
    insert into public.fleet_hosts as t
        (group_name, host, last_seen, version, ready, queued, failed, bytes)
    values (g, h, now(), heartbeat ->> 'version', (heartbeat ->> 'ready')::bigint,
            (heartbeat ->> 'queued')::bigint, (heartbeat ->> 'failed')::bigint,
            (heartbeat ->> 'bytes')::bigint)
    on conflict on constraint fleet_hosts_pkey do update set
        last_seen = now(),
        version = coalesce(excluded.version, t.version),
        ready = coalesce(excluded.ready, t.ready),
        queued = coalesce(excluded.queued, t.queued),
        failed = coalesce(excluded.failed, t.failed),
        bytes = coalesce(excluded.bytes, t.bytes);
    return n;
end;
$$;

-- -- row-level security -----------------------------------------------------------------

alter table public.fleet_wants enable row level security;
alter table public.fleet_claims enable row level security;
alter table public.fleet_blobs enable row level security;
alter table public.fleet_ids enable row level security;
alter table public.fleet_hosts enable row level security;
alter table public.fleet_states enable row level security;
alter table public.fleet_uncacheable enable row level security;

-- Hosts resolve file_ids and expected hashes through provider_file_uploads, like a
-- single host with the service key: they read it (every row: it is the project's
-- registry of uploads, not a group's), and never write it.
grant select on public.provider_file_uploads to prefetchd_host;
drop policy if exists provider_file_uploads_host_select on public.provider_file_uploads;
create policy provider_file_uploads_host_select on public.provider_file_uploads
    for select to prefetchd_host using (true);

drop policy if exists fleet_wants_host_select on public.fleet_wants;
create policy fleet_wants_host_select on public.fleet_wants for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());

drop policy if exists fleet_claims_host_select on public.fleet_claims;
create policy fleet_claims_host_select on public.fleet_claims for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
-- A lease is this key's host's, and ends within the hour (no 'infinity' lease).
drop policy if exists fleet_claims_host_insert on public.fleet_claims;
create policy fleet_claims_host_insert on public.fleet_claims for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host()
                and expires_at <= now() + interval '1 hour');
-- USING: a host may change only a lease it holds or one that has expired (its holder
-- died), never another host's live lease; WITH CHECK makes the holder this key's host,
-- for at most an hour.
drop policy if exists fleet_claims_host_update on public.fleet_claims;
create policy fleet_claims_host_update on public.fleet_claims for update to prefetchd_host
    using (group_name = public.prefetchd_jwt_group()
           and (expires_at <= now() or host = public.prefetchd_jwt_host()))
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host()
                and expires_at <= now() + interval '1 hour');
drop policy if exists fleet_claims_host_delete on public.fleet_claims;
create policy fleet_claims_host_delete on public.fleet_claims for delete to prefetchd_host
    using (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());

drop policy if exists fleet_blobs_host_select on public.fleet_blobs;
create policy fleet_blobs_host_select on public.fleet_blobs for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
drop policy if exists fleet_blobs_host_insert on public.fleet_blobs;
create policy fleet_blobs_host_insert on public.fleet_blobs for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and uploaded_by = public.prefetchd_jwt_host());
-- No UPDATE: a blob row, once written, names bytes already in Storage; nothing changes
-- it (record_blob does nothing on a second record). Dropped from earlier versions.
drop policy if exists fleet_blobs_host_update on public.fleet_blobs;

drop policy if exists fleet_ids_host_select on public.fleet_ids;
create policy fleet_ids_host_select on public.fleet_ids for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
drop policy if exists fleet_ids_host_insert on public.fleet_ids;
create policy fleet_ids_host_insert on public.fleet_ids for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and recorded_by = public.prefetchd_jwt_host());
-- Only the host that recorded a mapping may change it (first writer wins).
drop policy if exists fleet_ids_host_update on public.fleet_ids;
create policy fleet_ids_host_update on public.fleet_ids for update to prefetchd_host
    using (group_name = public.prefetchd_jwt_group() and recorded_by = public.prefetchd_jwt_host())
    with check (group_name = public.prefetchd_jwt_group() and recorded_by = public.prefetchd_jwt_host());

drop policy if exists fleet_uncacheable_host_select on public.fleet_uncacheable;
create policy fleet_uncacheable_host_select on public.fleet_uncacheable for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
drop policy if exists fleet_uncacheable_host_insert on public.fleet_uncacheable;
create policy fleet_uncacheable_host_insert on public.fleet_uncacheable for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and recorded_by = public.prefetchd_jwt_host());

drop policy if exists fleet_hosts_host_select on public.fleet_hosts;
create policy fleet_hosts_host_select on public.fleet_hosts for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
drop policy if exists fleet_hosts_host_insert on public.fleet_hosts;
create policy fleet_hosts_host_insert on public.fleet_hosts for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());
drop policy if exists fleet_hosts_host_update on public.fleet_hosts;
create policy fleet_hosts_host_update on public.fleet_hosts for update to prefetchd_host
    using (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host())
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());

drop policy if exists fleet_states_host_select on public.fleet_states;
create policy fleet_states_host_select on public.fleet_states for select to prefetchd_host
    using (group_name = public.prefetchd_jwt_group());
drop policy if exists fleet_states_host_insert on public.fleet_states;
create policy fleet_states_host_insert on public.fleet_states for insert to prefetchd_host
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());
drop policy if exists fleet_states_host_update on public.fleet_states;
create policy fleet_states_host_update on public.fleet_states for update to prefetchd_host
    using (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host())
    with check (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());
drop policy if exists fleet_states_host_delete on public.fleet_states;
create policy fleet_states_host_delete on public.fleet_states for delete to prefetchd_host
    using (group_name = public.prefetchd_jwt_group() and host = public.prefetchd_jwt_host());

-- -- grants -----------------------------------------------------------------------------

grant select on public.fleet_wants to prefetchd_host;
grant select, insert, update, delete on public.fleet_claims to prefetchd_host;
grant select, insert on public.fleet_blobs to prefetchd_host;
revoke update on public.fleet_blobs from prefetchd_host;  -- granted by earlier versions
grant select, insert, update on public.fleet_ids to prefetchd_host;
grant select, insert, update on public.fleet_hosts to prefetchd_host;
grant select, insert, update, delete on public.fleet_states to prefetchd_host;
grant select, insert on public.fleet_uncacheable to prefetchd_host;

revoke all on function public.prefetchd_jwt_group() from public;
revoke all on function public.prefetchd_jwt_host() from public;
revoke all on function public.prefetchd_fleet_group(text) from public;
revoke all on function public.prefetchd_fleet_wants_stamp() from public;
revoke all on function public.prefetchd_fleet_want(text, jsonb) from public;
revoke all on function public.prefetchd_fleet_claim(text, text, integer, text) from public;
revoke all on function public.prefetchd_fleet_release(text, text, text) from public;
revoke all on function public.prefetchd_fleet_record_blob(text, bigint, text, text, text, text, text, text, text) from public;
revoke all on function public.prefetchd_fleet_report(text, jsonb, jsonb, text) from public;
revoke all on function public.prefetchd_fleet_record_uncacheable(text, text, text, text, text, text, bigint, text) from public;

grant execute on function public.prefetchd_jwt_group() to prefetchd_host;
grant execute on function public.prefetchd_jwt_host() to prefetchd_host;
grant execute on function public.prefetchd_fleet_group(text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_claim(text, text, integer, text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_release(text, text, text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_record_blob(text, bigint, text, text, text, text, text, text, text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_report(text, jsonb, jsonb, text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_record_uncacheable(text, text, text, text, text, text, bigint, text) to prefetchd_host;
-- Refused inside for host keys; granted so the refusal is a clear message.
grant execute on function public.prefetchd_fleet_want(text, jsonb) to prefetchd_host;
grant execute on function public.prefetchd_record_downloads(jsonb) to prefetchd_host;

do $$
declare
    f text;
begin
    foreach f in array array[
        'public.prefetchd_jwt_group()', 'public.prefetchd_jwt_host()',
        'public.prefetchd_fleet_group(text)', 'public.prefetchd_fleet_wants_stamp()',
        'public.prefetchd_fleet_want(text, jsonb)',
        'public.prefetchd_fleet_claim(text, text, integer, text)',
        'public.prefetchd_fleet_release(text, text, text)',
        'public.prefetchd_fleet_record_blob(text, bigint, text, text, text, text, text, text, text)',
        'public.prefetchd_fleet_report(text, jsonb, jsonb, text)',
        'public.prefetchd_fleet_record_uncacheable(text, text, text, text, text, text, bigint, text)',
        'public.prefetchd_fleet_blob_access(text, text)']
    loop
        if to_regprocedure(f) is null then
            continue;  -- prefetchd_fleet_blob_access is created below, on the first run
        end if;
        if exists (select 1 from pg_roles where rolname = 'anon') then
            execute format('revoke all on function %s from anon', f);
        end if;
        if exists (select 1 from pg_roles where rolname = 'authenticated') then
            execute format('revoke all on function %s from authenticated', f);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant all on public.fleet_wants, public.fleet_claims, public.fleet_blobs,
            public.fleet_ids, public.fleet_hosts, public.fleet_states,
            public.fleet_uncacheable to service_role;
        grant usage, select on sequence public.fleet_wants_revision_seq to service_role;
        foreach f in array array[
            'public.prefetchd_jwt_group()', 'public.prefetchd_jwt_host()',
            'public.prefetchd_fleet_group(text)',
            'public.prefetchd_fleet_want(text, jsonb)',
            'public.prefetchd_fleet_claim(text, text, integer, text)',
            'public.prefetchd_fleet_release(text, text, text)',
            'public.prefetchd_fleet_record_blob(text, bigint, text, text, text, text, text, text, text)',
            'public.prefetchd_fleet_report(text, jsonb, jsonb, text)',
            'public.prefetchd_fleet_record_uncacheable(text, text, text, text, text, text, bigint, text)']
        loop
            execute format('grant execute on function %s to service_role', f);
        end loop;
    end if;
end
$$;

-- -- Storage: the cache bucket ----------------------------------------------------------

-- Blobs live at <group>/sha256/<hex> in the cache bucket ([fleet] cache_bucket). A host
-- may read and add objects under its own group's folder of a cache bucket, and nowhere
-- else: the cache buckets are the rows of prefetchd_fleet_cache_buckets ('prefetchd-cache',
-- the default of [fleet] cache_bucket, is there; add yours with
--     insert into public.prefetchd_fleet_cache_buckets values ('my-cache');
-- as the project's owner). A host key cannot write this table.
create table if not exists public.prefetchd_fleet_cache_buckets (
    bucket_id  text primary key
);
insert into public.prefetchd_fleet_cache_buckets (bucket_id) values ('prefetchd-cache')
    on conflict do nothing;
alter table public.prefetchd_fleet_cache_buckets enable row level security;
drop policy if exists prefetchd_fleet_cache_buckets_host_select
    on public.prefetchd_fleet_cache_buckets;
create policy prefetchd_fleet_cache_buckets_host_select on public.prefetchd_fleet_cache_buckets
    for select to prefetchd_host using (true);
grant select on public.prefetchd_fleet_cache_buckets to prefetchd_host;

create or replace function public.prefetchd_fleet_blob_access(bucket_id text, name text)
returns boolean
language sql
stable
set search_path = public, pg_temp
as $$
    select public.prefetchd_jwt_group() is not null
       and split_part(name, '/', 1) = public.prefetchd_jwt_group()
       and exists (select 1 from public.prefetchd_fleet_cache_buckets c
                   where c.bucket_id = prefetchd_fleet_blob_access.bucket_id)
$$;
revoke all on function public.prefetchd_fleet_blob_access(text, text) from public;
grant execute on function public.prefetchd_fleet_blob_access(text, text) to prefetchd_host;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.prefetchd_fleet_blob_access(text, text) to service_role;
        grant all on public.prefetchd_fleet_cache_buckets to service_role;
    end if;
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on function public.prefetchd_fleet_blob_access(text, text) from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on function public.prefetchd_fleet_blob_access(text, text) from authenticated;
    end if;
    if to_regclass('storage.objects') is not null then
        drop policy if exists prefetchd_fleet_blobs_select on storage.objects;
        create policy prefetchd_fleet_blobs_select on storage.objects
            for select to prefetchd_host
            using (public.prefetchd_fleet_blob_access(bucket_id, name));
        drop policy if exists prefetchd_fleet_blobs_insert on storage.objects;
        create policy prefetchd_fleet_blobs_insert on storage.objects
            for insert to prefetchd_host
            with check (public.prefetchd_fleet_blob_access(bucket_id, name));
        grant select, insert on storage.objects to prefetchd_host;
        execute format('grant usage on schema %I to prefetchd_host',
                       (select relnamespace::regnamespace::text
                        from pg_class where oid = to_regclass('storage.objects')));
        if to_regclass('storage.buckets') is not null then
            grant select on storage.buckets to prefetchd_host;
        end if;
    end if;
end
$$;

-- -- a lease's progress -------------------------------------------------------------------

-- How far the holder of a lease got with the blob: `done` of `size` bytes are in Storage
-- (its resumable upload follows the download), and it expects the blob to be complete
-- at `eta_at`. Hosts waiting for the blob read it (prefetchd_fleet_lease) to come back
-- when it will be there instead of polling blindly.
alter table public.fleet_claims add column if not exists done bigint;
alter table public.fleet_claims add column if not exists size bigint;
alter table public.fleet_claims add column if not exists progress_at timestamptz;
alter table public.fleet_claims add column if not exists eta_at timestamptz;

-- The holder's word on its upload; true when `host` holds the lease (else nothing changes).
create or replace function public.prefetchd_fleet_progress(
    key text, host text, done bigint, size bigint, eta_seconds double precision,
    group_name text default null)
returns boolean
language plpgsql
security invoker
set search_path = public, pg_temp
as $$
declare
    g text := public.prefetchd_fleet_group(prefetchd_fleet_progress.group_name);
begin
    update public.fleet_claims c set
        done = prefetchd_fleet_progress.done,
        size = prefetchd_fleet_progress.size,
        progress_at = now(),
        eta_at = now() + make_interval(secs => greatest(0, least(eta_seconds, 86400)))
    where c.group_name = g and c.key = prefetchd_fleet_progress.key
      and c.host = prefetchd_fleet_progress.host and c.expires_at > now();
    return found;
end;
$$;

-- A lease as a waiting host sees it, in seconds from the database's now (so the hosts'
-- clocks do not matter): {"host", "expires_in", "done", "size", "progress_age",
-- "eta_in"}, the last four null until the holder says; null when nobody holds it.
create or replace function public.prefetchd_fleet_lease(key text, group_name text default null)
returns jsonb
language sql
stable
security invoker
set search_path = public, pg_temp
as $$
    select jsonb_build_object(
        'host', c.host,
        'expires_in', extract(epoch from c.expires_at - now()),
        'done', c.done, 'size', c.size,
        'progress_age', extract(epoch from now() - c.progress_at),
        'eta_in', extract(epoch from c.eta_at - now()))
    from public.fleet_claims c
    where c.group_name = public.prefetchd_fleet_group(prefetchd_fleet_lease.group_name)
      and c.key = prefetchd_fleet_lease.key and c.expires_at > now()
$$;

revoke all on function public.prefetchd_fleet_progress(text, text, bigint, bigint, double precision, text) from public;
revoke all on function public.prefetchd_fleet_lease(text, text) from public;
grant execute on function public.prefetchd_fleet_progress(text, text, bigint, bigint, double precision, text) to prefetchd_host;
grant execute on function public.prefetchd_fleet_lease(text, text) to prefetchd_host;
do $$
declare
    f text;
begin
    foreach f in array array[
        'public.prefetchd_fleet_progress(text, text, bigint, bigint, double precision, text)',
        'public.prefetchd_fleet_lease(text, text)']
    loop
        if exists (select 1 from pg_roles where rolname = 'anon') then
            execute format('revoke all on function %s from anon', f);
        end if;
        if exists (select 1 from pg_roles where rolname = 'authenticated') then
            execute format('revoke all on function %s from authenticated', f);
        end if;
        if exists (select 1 from pg_roles where rolname = 'service_role') then
            execute format('grant execute on function %s to service_role', f);
        end if;
    end loop;
end
$$;
