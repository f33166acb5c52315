{{ config(materialized='view') }}
-- FinOps FOCUS cost and usage rows (1.2 and 1.3 column generations side by side) for everything spotshift ran or moved:
--   * GPU compute intervals (ServiceCategory Compute; spot = PricingCategory Dynamic, on demand =
--     Standard), split at calendar-month boundaries so every charge period lies inside its
--     billing period (costs prorated by time);
--   * data transfer between locations (ServiceCategory Networking, PricingUnit GB), billed by the
--     source location's provider;
--   * inference serving windows (Compute; reserved capacity = Committed).
-- FOCUS columns first (alphabetical, as in the spec), then spotshift's own x_ columns.
-- BilledCost = EffectiveCost (no amortized commitments); ListCost = ContractedCost at the on-demand
-- list price (no negotiated discounts are known to spotshift). Timestamps are UTC.
-- Numbers are DECIMAL(38, 10), rounded to 10 decimal places:
-- money and unit prices in USD to 1e-10, quantities (hours, GB) to 1e-10, so CSV exports are in
-- plain decimal notation with no float noise.
-- Provider columns: FOCUS 1.2 ProviderName and PublisherName (deprecated by 1.3, kept for 1.2
-- readers) beside the FOCUS 1.3 ServiceProviderName and HostProviderName; spotshift rents
-- instances directly from each cloud, so all four name the same company.
with providers as (
    select * from {{ ref('focus_provider_services') }}
),

usage_months as (
    select
        u.*,
        unnest(generate_series(
            date_trunc('month', u.started_at),
            date_trunc('month', greatest(u.started_at, u.ended_at - interval 1 microsecond)),
            interval 1 month
        )) as month_start
    from {{ ref('fct_gpu_usage') }} as u
),

usage_rows as (
    select
        *,
        greatest(started_at, month_start) as charge_start,
        -- a zero-length interval still gets a (one-second) charge period: FOCUS ends are exclusive
        greatest(least(ended_at, month_start + interval 1 month), started_at + interval 1 second) as charge_end
    from usage_months
),

usage_charges as (
    select
        u.provider,
        u.region,
        u.month_start as billing_period_start,
        u.charge_start,
        u.charge_end,
        case
            when u.ended_at > u.started_at then epoch(u.charge_end - u.charge_start) / epoch(u.ended_at - u.started_at)
            else 1.0
        end as fraction,
        u.usd as billed_usd,
        u.list_usd,
        coalesce(u.list_price_usd_hour, u.price_usd_hour) as list_unit_price,
        u.hours as quantity,
        'Hours' as pricing_unit,
        case when u.market = 'spot' then 'Dynamic' else 'Standard' end as pricing_category,
        'Compute' as service_category,
        'Virtual Machines' as service_subcategory,
        'compute' as service_kind,
        u.instance_type
        || ' ' || replace(u.market, '_', '-') || ' instance (' || u.gpu_count || 'x ' || coalesce(u.gpu_model, 'GPU')
        || ') in ' || u.location || ' for training job ' || u.job as charge_description,
        cast(null as varchar) as commitment_discount_id,
        'training' as x_workload,
        u.job as x_job,
        u.location as x_location,
        u.market as x_market,
        u.instance_type as x_instance_type,
        u.gpu_model as x_gpu_model,
        u.gpu_count as x_gpu_count,
        u.usage_id as x_usage_id,
        cast(null as varchar) as x_transfer_id,
        u.migration_id as x_migration_id,
        u.ended_in_preemption as x_ended_in_preemption,
        cast(null as bigint) as x_bytes_sent,
        cast(null as varchar) as x_destination_location,
        u.run_id as x_run_id,
        cast(null as varchar) as x_endpoint
    from usage_rows as u
),

transfer_charges as (
    select
        t.src_provider as provider,
        t.src_region as region,
        date_trunc('month', t.started_at) as billing_period_start,
        t.started_at as charge_start,
        least(
            t.started_at + to_microseconds(cast(greatest(t.seconds, 1) * 1e6 as bigint)),
            date_trunc('month', t.started_at) + interval 1 month
        ) as charge_end,
        1.0 as fraction,
        t.egress_usd as billed_usd,
        t.egress_usd as list_usd,
        coalesce(t.egress_usd_per_gb, t.egress_usd / nullif(t.gb_sent, 0), 0.0) as list_unit_price,
        t.gb_sent as quantity,
        'GB' as pricing_unit,
        'Standard' as pricing_category,
        'Networking' as service_category,
        'Network Connectivity' as service_subcategory,
        'network' as service_kind,
        'Data transfer of ' || t.kind || ' ' || t.entity || ' from ' || t.src_location || ' to '
        || t.dst_location || ' (' || coalesce(t.method, 'copy') || ')' as charge_description,
        cast(null as varchar) as commitment_discount_id,
        'training' as x_workload,
        t.job as x_job,
        t.src_location as x_location,
        cast(null as varchar) as x_market,
        cast(null as varchar) as x_instance_type,
        cast(null as varchar) as x_gpu_model,
        cast(null as integer) as x_gpu_count,
        cast(null as varchar) as x_usage_id,
        t.transfer_id as x_transfer_id,
        t.migration_id as x_migration_id,
        cast(null as boolean) as x_ended_in_preemption,
        t.bytes_sent as x_bytes_sent,
        t.dst_location as x_destination_location,
        t.run_id as x_run_id,
        cast(null as varchar) as x_endpoint
    from {{ ref('fct_data_transfer') }} as t
    -- uploads from outside any cloud location ("local") are not a provider's charge
    where t.is_cross_location and t.src_location like '%/%' and (t.bytes_sent > 0 or t.egress_usd > 0)
),

inference_charges as (
    select
        i.provider,
        i.region,
        date_trunc('month', i.window_start) as billing_period_start,
        i.window_start as charge_start,
        least(
            greatest(i.window_end, i.window_start + interval 1 second),
            date_trunc('month', i.window_start) + interval 1 month
        ) as charge_end,
        1.0 as fraction,
        i.usd as billed_usd,
        i.usd as list_usd,
        i.usd / nullif(i.hours, 0) as list_unit_price,
        i.hours as quantity,
        'Hours' as pricing_unit,
        case i.market when 'spot' then 'Dynamic' when 'reserved' then 'Committed' else 'Standard' end
            as pricing_category,
        'Compute' as service_category,
        'Virtual Machines' as service_subcategory,
        'compute' as service_kind,
        'Inference serving (' || replace(i.market, '_', '-') || ') in ' || i.location || ': '
        || i.requests || ' requests' as charge_description,
        case when i.market = 'reserved' then 'spotshift-reserved:' || i.location end as commitment_discount_id,
        'inference' as x_workload,
        cast(null as varchar) as x_job,
        i.location as x_location,
        i.market as x_market,
        cast(null as varchar) as x_instance_type,
        cast(null as varchar) as x_gpu_model,
        cast(null as integer) as x_gpu_count,
        cast(null as varchar) as x_usage_id,
        cast(null as varchar) as x_transfer_id,
        cast(null as varchar) as x_migration_id,
        cast(null as boolean) as x_ended_in_preemption,
        cast(null as bigint) as x_bytes_sent,
        cast(null as varchar) as x_destination_location,
        cast(null as varchar) as x_run_id,
        nullif(i.endpoint, '') as x_endpoint
    from {{ ref('stg_spotshift__inference_usage') }} as i
),

charges as (
    select * from usage_charges
    union all
    select * from transfer_charges
    union all
    select * from inference_charges
)

select
    cast(round(c.billed_usd * c.fraction, 10) as decimal(38, 10)) as BilledCost,
    c.provider || ':' || '{{ var("billing_account_id") }}' as BillingAccountId,
    '{{ var("billing_account_name") }}' as BillingAccountName,
    'USD' as BillingCurrency,
    c.billing_period_start + interval 1 month as BillingPeriodEnd,
    c.billing_period_start as BillingPeriodStart,
    'Usage' as ChargeCategory,
    cast(null as varchar) as ChargeClass,
    c.charge_description as ChargeDescription,
    'Usage-Based' as ChargeFrequency,
    c.charge_end as ChargePeriodEnd,
    c.charge_start as ChargePeriodStart,
    case when c.commitment_discount_id is not null then 'Usage' end as CommitmentDiscountCategory,
    c.commitment_discount_id as CommitmentDiscountId,
    case when c.commitment_discount_id is not null then 'Used' end as CommitmentDiscountStatus,
    case when c.commitment_discount_id is not null then 'Reserved Capacity' end as CommitmentDiscountType,
    cast(round(c.quantity * c.fraction, 10) as decimal(38, 10)) as ConsumedQuantity,
    c.pricing_unit as ConsumedUnit,
    cast(round(coalesce(c.list_usd, c.billed_usd) * c.fraction, 10) as decimal(38, 10)) as ContractedCost,
    cast(round(c.list_unit_price, 10) as decimal(38, 10)) as ContractedUnitPrice,
    cast(round(c.billed_usd * c.fraction, 10) as decimal(38, 10)) as EffectiveCost,
    coalesce(p.provider_name, c.provider) as HostProviderName,
    -- estimates, not invoiced charges: FOCUS requires InvoiceId null for charges without an invoice
    cast(null as varchar) as InvoiceId,
    coalesce(p.provider_name, c.provider) as InvoiceIssuerName,
    cast(round(coalesce(c.list_usd, c.billed_usd) * c.fraction, 10) as decimal(38, 10)) as ListCost,
    cast(round(c.list_unit_price, 10) as decimal(38, 10)) as ListUnitPrice,
    c.pricing_category as PricingCategory,
    cast(round(c.quantity * c.fraction, 10) as decimal(38, 10)) as PricingQuantity,
    c.pricing_unit as PricingUnit,
    coalesce(p.provider_name, c.provider) as ProviderName,
    coalesce(p.provider_name, c.provider) as PublisherName,
    c.region as RegionId,
    c.region as RegionName,
    case when c.service_kind = 'compute' then 'Virtual Machine' end as ResourceType,
    c.service_category as ServiceCategory,
    case
        when c.service_kind = 'network' then coalesce(p.network_service_name, c.provider || ' networking')
        else coalesce(p.compute_service_name, c.provider || ' compute')
    end as ServiceName,
    coalesce(p.provider_name, c.provider) as ServiceProviderName,
    c.service_subcategory as ServiceSubcategory,
    to_json(map_from_entries(list_filter(
        [
            ('spotshift/workload', c.x_workload), ('spotshift/job', c.x_job),
            ('spotshift/endpoint', c.x_endpoint), ('spotshift/location', c.x_location)
        ],
        lambda e: e[2] is not null
    ))) as Tags,
    c.x_workload,
    c.x_job,
    c.x_location,
    c.x_market,
    c.x_instance_type,
    c.x_gpu_model,
    c.x_gpu_count,
    c.x_usage_id,
    c.x_transfer_id,
    c.x_migration_id,
    c.x_ended_in_preemption,
    c.x_bytes_sent,
    c.x_destination_location,
    c.x_run_id,
    c.x_endpoint
from charges as c
left join providers as p on c.provider = p.provider
