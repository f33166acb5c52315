with source as (
    select * from {{ source('spotshift', 'shadow_validations') }}
),

renamed as (
    select
        validation_id,
        job,
        source_location,
        target_location,
        checkpoint_id,
        steps,
        max_loss_diff,
        max_grad_norm_rel_diff,
        max_activation_rel_diff,
        checkpoint_bytes_equal,
        passed,
        reasons,
        validated_at
    from source
    where validation_id is not null
)

select * from {{ deduplicate('renamed', 'validation_id', 'validated_at desc') }} as deduplicated
