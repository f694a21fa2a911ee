//! Tests of the rounds' helpers ([`super`]).

use super::*;

#[test]
fn jobs_in_parts_keep_their_order_and_each_job_once() {
    let job = |slot, len| Job {
        addr: slot * PAGE,
        len,
        slot,
    };
    let jobs = [job(0, 6), job(1, 6), job(2, 20), job(3, 1), job(4, 2)];
    let lens = |parts: Vec<&[Job]>| -> Vec<Vec<u64>> {
        parts
            .iter()
            .map(|p| p.iter().map(|j| j.slot).collect())
            .collect()
    };
    assert_eq!(
        lens(in_parts(&jobs, 10)),
        vec![vec![0, 1], vec![2], vec![3, 4]]
    );
    assert_eq!(lens(in_parts(&jobs, 100)), vec![vec![0, 1, 2, 3, 4]]);
    assert_eq!(
        lens(in_parts(&jobs, 1)),
        vec![vec![0], vec![1], vec![2], vec![3], vec![4]]
    );
    assert!(in_parts(&[], 10).is_empty());
}

#[test]
fn subtract_regions() {
    let r = |s, e| Region {
        start: s,
        end: e,
        categories: 0,
    };
    assert_eq!(
        subtract(0, 10, &[r(2, 3), r(5, 7)]),
        vec![(0, 2), (3, 5), (7, 10)]
    );
    assert_eq!(subtract(0, 10, &[r(0, 10)]), vec![]);
    assert_eq!(subtract(4, 6, &[r(0, 5)]), vec![(5, 6)]);
}

#[test]
fn stretches_and_intersections() {
    let r = |s, e, c| Region {
        start: s * PAGE,
        end: e * PAGE,
        categories: c,
    };
    let w = [r(0, 1, 2), r(10, 11, 2), r(100, 101, 2)];
    assert_eq!(
        stretches(&w),
        vec![(0, 11 * PAGE), (100 * PAGE, 101 * PAGE)]
    );
    let around = [r(0, 5, 8), r(5, 11, 0x28), r(100, 101, 8)];
    assert_eq!(
        intersect(&around, &w),
        vec![r(0, 1, 8), r(10, 11, 0x28), r(100, 101, 8)]
    );
}

#[test]
fn saveable_pages() {
    use uffd::*;
    assert!(saveable(PAGE_IS_PRESENT));
    assert!(saveable(PAGE_IS_SWAPPED));
    assert!(!saveable(PAGE_IS_PRESENT | PAGE_IS_FILE));
    assert!(!saveable(PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
}
