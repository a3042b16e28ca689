-- prefetchd: download statistics on Supabase. Safe to apply twice (every statement is
-- idempotent) and on an existing provider_file_uploads table.
--   psql "$SUPABASE_DB_URL" -v ON_ERROR_STOP=1 -f config/supabase/001_prefetchd.sql
-- or paste it into the SQL editor of the Supabase dashboard.

-- The table prefetchd reads to resolve file_ids; created here only if a project
-- does not have it yet (an existing one is extended, never replaced).
create table if not exists public.provider_file_uploads (
    id                bigserial primary key,
    provider          text not null,
    provider_file_id  text not null,
    sha256            text,
    filename          text,
    file_size_bytes   bigint,
    supabase_file_id  text,
    created_at        timestamptz not null default now(),
    unique (provider, provider_file_id)
);

alter table public.provider_file_uploads
    add column if not exists download_count bigint not null default 0;
alter table public.provider_file_uploads
    add column if not exists last_downloaded_at timestamptz;

-- One row per download event; event_id is made by the client, so a batch sent twice
-- (after a timeout, a crash, an outage) is stored once.
create table if not exists public.file_download_history (
    id             bigserial primary key,
    event_id       uuid not null unique,
    host           text not null,
    provider       text not null,
    file_id        text not null,
    destination    text,
    bytes          bigint,
    duration_ms    integer,
    cache_hit      boolean not null default false,
    sha256         text,
    downloaded_at  timestamptz not null,
    recorded_at    timestamptz not null default now()
);
-- Where the bytes came from: 'origin' (the provider), 'storage' (the fleet's Storage
-- cache) or 'local' (already in this host's store). Null for events sent before it existed.
alter table public.file_download_history
    add column if not exists source text
    check (source is null or source in ('origin', 'storage', 'local'));
create index if not exists file_download_history_file_idx
    on public.file_download_history (provider, file_id);
create index if not exists file_download_history_downloaded_at_idx
    on public.file_download_history (downloaded_at);

-- Row-level security stays on: without policies only roles that bypass RLS (the
-- service role) and the function below (security definer) touch these rows.
alter table public.provider_file_uploads enable row level security;
alter table public.file_download_history enable row level security;

-- Record a batch of events idempotently. Returns how many events were new. For each
-- new event whose (provider, file_id) has an upload row, that row's download_count
-- grows by one and last_downloaded_at becomes the latest downloaded_at seen.
-- An event may carry `source` ('origin' | 'storage' | 'local'). When the caller is a
-- fleet host (its JWT has a `host` claim, see 002_fleet.sql), that claim is the host
-- recorded, whatever the event says: a host key cannot write history as another host.
-- (The claim is read inline so that this file does not depend on 002.)
create or replace function public.prefetchd_record_downloads(events jsonb)
returns integer
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    added integer;
    claim_host text := nullif(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'host', '');
begin
    if events is null or jsonb_typeof(events) <> 'array' then
        raise exception 'prefetchd_record_downloads: events must be a JSON array'
            using errcode = '22023';
    end if;

    with incoming as (
        select distinct on (e.event_id) e.*
        from jsonb_to_recordset(events) as e(
            event_id uuid, host text, provider text, file_id text, destination text,
            bytes bigint, duration_ms integer, cache_hit boolean, sha256 text,
            downloaded_at timestamptz, source text)
        order by e.event_id
    ), inserted as (
        insert into public.file_download_history
            (event_id, host, provider, file_id, destination, bytes, duration_ms,
             cache_hit, sha256, downloaded_at, source)
        select event_id, coalesce(claim_host, host), provider, file_id, destination, bytes,
               duration_ms, coalesce(cache_hit, false), sha256, downloaded_at, source
        from incoming
        on conflict (event_id) do nothing
        returning provider, file_id, downloaded_at
    ), per_file as (
        select provider, file_id, count(*) as n, max(downloaded_at) as latest
        from inserted
        group by provider, file_id
    ), bumped as (
        update public.provider_file_uploads u
        set download_count = u.download_count + p.n,
            last_downloaded_at = greatest(u.last_downloaded_at, p.latest)
        from per_file p
        where u.provider = p.provider and u.provider_file_id = p.file_id
        returning 1
    )
    select count(*) into added from inserted;
    -- "bumped" runs even though it is not read: data-modifying CTEs always execute.
    return added;
end;
$$;

revoke all on function public.prefetchd_record_downloads(jsonb) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on function public.prefetchd_record_downloads(jsonb) from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on function public.prefetchd_record_downloads(jsonb) from authenticated;
    end if;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.prefetchd_record_downloads(jsonb) to service_role;
        grant select on public.provider_file_uploads to service_role;
    end if;
end
$$;
