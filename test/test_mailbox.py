"""The in-process mailbox: hand-over by reference, the drop-oldest bound, counters, threads."""

import threading

import numpy as np
import pytest

from sage_irp_ros.core.mailbox import EXPERIENCE_CHANNEL, Mailbox, default_mailbox


def test_a_post_reaches_a_subscriber_by_reference():
    box = Mailbox()
    got = []
    box.subscribe('latent', got.append)
    frame = np.zeros((480, 640, 3), np.uint8)
    item = {'latent': frame, 'summary': {'n': 1}}
    assert box.post('latent', item) == 1
    assert len(got) == 1 and got[0] is item and got[0]['latent'] is frame  # same objects
    frame[0, 0, 0] = 7  # no copy anywhere: the receiver sees the sender's buffer
    assert got[0]['latent'][0, 0, 0] == 7
    assert box.stats()['latent'] == {'posted': 1, 'delivered': 1, 'dropped': 0, 'errors': 0,
                                     'pending': 0, 'subscribers': 1, 'depth': 256}


def test_a_torch_tensor_stays_the_same_tensor():
    torch = pytest.importorskip('torch')
    box = Mailbox()
    t = torch.randn(1, 16, 32, 32)
    box.post('latent', t)
    (out,) = box.poll('latent')
    assert out is t and out.data_ptr() == t.data_ptr() and out.device == t.device


def test_the_queue_drops_its_oldest_beyond_its_depth_and_counts():
    box = Mailbox()
    ch = box.channel('frames', depth=3)
    objs = [object() for _ in range(5)]
    for o in objs:
        assert ch.post(o) == 0  # no subscriber: queued
    st = ch.stats()
    assert (st['posted'], st['dropped'], st['pending'], st['delivered']) == (5, 2, 3, 0)
    out = ch.poll(max_items=2)
    assert out[0] is objs[2] and out[1] is objs[3]  # the two oldest were dropped
    assert ch.poll() == [objs[4]] and ch.poll() == []
    st = ch.stats()
    assert (st['delivered'], st['pending']) == (3, 0)


def test_a_late_subscriber_gets_what_waits_and_a_failing_one_is_counted():
    box = Mailbox()
    box.post(EXPERIENCE_CHANNEL, 1)
    box.post(EXPERIENCE_CHANNEL, 2)
    got = []
    sub = box.subscribe(EXPERIENCE_CHANNEL, got.append)
    assert got == [1, 2]

    def broken(obj):
        raise RuntimeError('receiver bug')
    box.subscribe(EXPERIENCE_CHANNEL, broken)
    assert box.post(EXPERIENCE_CHANNEL, 3) == 1  # the good one still got it
    assert got == [1, 2, 3]
    st = box.stats()[EXPERIENCE_CHANNEL]
    assert (st['posted'], st['delivered'], st['errors'], st['subscribers']) == (3, 3, 1, 2)
    sub.close()
    sub.close()  # idempotent
    assert box.stats()[EXPERIENCE_CHANNEL]['subscribers'] == 1


def test_poll_waits_for_a_post_from_another_thread():
    box = Mailbox()
    item = object()
    timer = threading.Timer(0.05, box.post, args=('x', item))
    timer.start()
    got = box.poll('x', timeout=5.0)
    timer.join()
    assert got == [item] and got[0] is item
    assert box.poll('x', timeout=0.01) == []


def test_bad_names_and_depths_are_refused_and_the_default_is_one_mailbox():
    box = Mailbox()
    with pytest.raises(ValueError):
        box.channel('')
    with pytest.raises(ValueError):
        box.channel('a', depth=0)
    box.channel('a', depth=2)
    assert box.channel('a').depth == 2
    assert default_mailbox() is default_mailbox()
