-- One row per committed checkpoint of a job (the same content committed twice is kept once).
with source as (
    select * from {{ source('spotshift', 'checkpoints') }}
),

renamed as (
    select
        checkpoint_id,
        job,
        step,
        tokens,
        kind,
        location,
        url,
        bytes,
        created_at,
        serialize_s,
        encrypt_s,
        upload_s,
        total_s
    from source
    where checkpoint_id is not null and job is not null and created_at is not null
)

select * from {{ deduplicate('renamed', 'job, checkpoint_id', 'created_at') }} as deduplicated
