from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.http import Http404
from django.urls import reverse
from factories import PASSWORD, client_for, make_member, make_organization, make_user
from scoping import assert_other_org_gets_404

from webapp.accounts import services
from webapp.accounts.models import Membership, Organization, Role, User
from webapp.accounts.selectors import get_object_for_org_or_404

pytestmark = pytest.mark.django_db


def test_organization_create_makes_the_owner_its_admin_with_a_unique_slug():
    owner = make_user()
    first = services.organization_create(name="Edge Lab", owner=owner)
    second = services.organization_create(name="Edge Lab", owner=owner)

    assert (first.slug, second.slug) == ("edge-lab", "edge-lab-2")
    assert Membership.objects.get(organization=first, user=owner).role == Role.ADMIN


def test_a_user_is_a_member_of_an_organisation_only_once():
    org = make_organization()
    user = make_member(org)
    with pytest.raises(ValidationError):
        services.membership_add(organization=org, user=user, role=Role.MANAGER)


def test_org_a_gets_404_for_org_b_object_urls():
    org_a, org_b = make_organization(name="A"), make_organization(name="B")
    admin_a = Membership.objects.get(organization=org_a).user
    b_membership = Membership.objects.for_org(org_b).get()

    assert_other_org_gets_404(
        client_for(admin_a),
        [reverse("accounts:member_role_change", args=[b_membership.pk])],
        methods=["post"],
    )
    b_membership.refresh_from_db()
    assert b_membership.role == Role.ADMIN


def test_get_object_for_org_or_404_hides_other_organisations_rows():
    org_a, org_b = make_organization(), make_organization()
    row_b = Membership.objects.for_org(org_b).get()

    assert get_object_for_org_or_404(Membership, org=org_b, pk=row_b.pk) == row_b
    with pytest.raises(Http404):
        get_object_for_org_or_404(Membership, org=org_a, pk=row_b.pk)
    with pytest.raises(Http404):
        get_object_for_org_or_404(Membership.objects.all(), org=None, pk=row_b.pk)


def test_an_admin_adds_a_new_user_and_changes_a_role():
    org = make_organization()
    admin = Membership.objects.get(organization=org).user
    client = client_for(admin)

    client.post(
        reverse("accounts:member_add"),
        {"username": "newbie", "role": "engineer", "email": "n@example.com", "password": PASSWORD},
    )
    newbie = User.objects.get(username="newbie")
    membership = Membership.objects.get(organization=org, user=newbie)
    client.post(reverse("accounts:member_role_change", args=[membership.pk]), {"role": "manager"})

    membership.refresh_from_db()
    assert membership.role == Role.MANAGER
    assert newbie.check_password(PASSWORD)
    page = client.get(reverse("accounts:organization_settings")).content.decode()
    assert "newbie" in page


def test_an_admin_adds_an_existing_user_by_username():
    org = make_organization()
    admin = Membership.objects.get(organization=org).user
    outsider = make_user(username="outsider")

    client_for(admin).post(
        reverse("accounts:member_add"), {"username": "Outsider", "role": "manager"}
    )

    assert Membership.objects.get(organization=org, user=outsider).role == Role.MANAGER


def test_an_engineer_can_see_members_but_not_manage_them():
    org = make_organization()
    engineer = make_member(org, role=Role.ENGINEER)
    client = client_for(engineer)

    assert client.get(reverse("accounts:organization_settings")).status_code == 200
    response = client.post(reverse("accounts:member_add"), {"username": "x", "role": "admin"})
    assert response.status_code == 403
    assert not User.objects.filter(username="x").exists()


def test_the_last_admin_cannot_be_demoted():
    org = make_organization()
    membership = Membership.objects.get(organization=org)
    with pytest.raises(ValidationError):
        services.membership_role_change(membership=membership, role=Role.ENGINEER)


def test_the_org_switcher_changes_the_current_organisation_only_to_ones_the_user_is_in():
    user = make_user()
    alpha = make_organization(name="Alpha", owner=user)
    beta = make_organization(name="Beta", owner=user)
    foreign = make_organization(name="Foreign")
    client = client_for(user)
    switch = reverse("accounts:organization_switch")

    client.post(switch, {"organization": beta.pk})
    assert client.get(reverse("api:me")).json()["current_organization_id"] == beta.pk
    client.post(switch, {"organization": foreign.pk})
    assert client.get(reverse("api:me")).json()["current_organization_id"] == beta.pk
    assert alpha.pk != beta.pk


def test_a_user_without_an_organisation_sees_a_page_that_says_so():
    response = client_for(make_user()).get(reverse("models"))
    assert response.status_code == 403
    assert "not in an organisation" in response.content.decode()


def test_bootstrap_creates_an_admin_and_the_default_organisation_once(capsys):
    call_command("edgeslim_bootstrap")
    first = capsys.readouterr().out
    call_command("edgeslim_bootstrap")
    second = capsys.readouterr().out

    admin = User.objects.get()
    password = first.strip().rsplit(" ", 1)[-1]
    assert admin.is_superuser and admin.is_staff and admin.check_password(password)
    assert Organization.objects.get().name == "Default"
    assert Membership.objects.get().role == Role.ADMIN
    assert "nothing to do" in second
    assert User.objects.count() == 1


def test_bootstrap_takes_a_username_and_password():
    call_command("edgeslim_bootstrap", "--username", "root", "--password", PASSWORD)
    assert User.objects.get(username="root").check_password(PASSWORD)


def test_the_admin_site_is_on_for_staff():
    call_command("edgeslim_bootstrap", "--username", "root", "--password", PASSWORD)
    client = client_for(User.objects.get(username="root"))
    assert client.get("/admin/accounts/organization/").status_code == 200
